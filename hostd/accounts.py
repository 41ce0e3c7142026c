"""The rules for accounts: what a name and a new password may be (pages and CLI alike)."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MIN_PASSWORD_LENGTH = 8
# Generous (NIST SP 800-63B asks for at least 64); Argon2 pre-hashes the password, so even
# 16 KiB of UTF-8 costs a few microseconds more.
MAX_PASSWORD_LENGTH = 4096


def new_account_problem(name: str, password: str, confirm: str) -> str | None:
    """What is wrong with a registration form, or None."""
    if not NAME_PATTERN.fullmatch(name):
        return (
            "A name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return password_problem(password, confirm)


def password_problem(password: str, confirm: str) -> str | None:
    """What is wrong with a new password, or None. Every character counts as typed: spaces,
    control characters and all (NIST SP 800-63B, 3.1.1.2)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"A password has at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"A password has at most {MAX_PASSWORD_LENGTH:,} characters."
    if password != confirm:
        return "The two passwords differ."
    return None
