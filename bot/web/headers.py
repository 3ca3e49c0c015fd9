"""The security headers every response carries, whoever builds it: Flask's after_request
(server.secure_headers) and the LINE webhook's WSGI path (bot.channels.line_webhook)."""

from __future__ import annotations

# The page loads its own script and stylesheet and talks only to this origin; its texts ride in
# a JSON data block, which CSP does not execute. Nothing may frame it (clickjacking), and no
# referrer leaves it (the page a resident came from, or ours, says something about them).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = ("Strict-Transport-Security", "max-age=31536000")  # only on HTTPS requests
