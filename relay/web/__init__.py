"""What the relay serves to a browser besides its API: the browser client and the demo page.

`assets` holds files read once at start-up and answered with an ETag (`Asset`); the browser
client is `clients/js/` of the repository (a wheel carries it as `relay/sdk/`, `setup.py`), the
demo page is `demo/`: a page of the relay's own origin, under a strict Content-Security-Policy.

Imports nothing else of `relay`.
"""
