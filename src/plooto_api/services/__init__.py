"""Services: the gateway's logic. They read and write the store; they know nothing of HTTP."""
