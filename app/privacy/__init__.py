"""Privacy: redaction of credentials and personal data before text leaves for a provider."""
