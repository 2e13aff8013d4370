"""plooto_sandbox: an emulator of the Plooto web portal (HTML login, MFA, internal JSON API)."""
