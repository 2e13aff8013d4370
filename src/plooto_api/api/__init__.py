"""The HTTP layer: routes, authentication, errors and pagination. No business logic lives here."""
