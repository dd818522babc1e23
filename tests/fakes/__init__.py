"""Hand-written backends for faults a real Dovecot cannot be made to show."""
