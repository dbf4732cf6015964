"""The HTTP edge shared by the node (``server.api``) and the router (``server.router``).

Framework-light: no FastAPI (Starlette types only where a module speaks ASGI), no engine,
no torch. ``errors`` (the ApiError hierarchy, the router's own errors too), ``render`` (the
one renderer of the OpenAI error envelope and the apps' exception handlers), ``media``
(the one Content-Type rule), ``protocol`` (the OpenAI request/response schemas), and
``security`` (the ASGI security middleware). The runtime and the engines import from here,
never from ``server.api``.
"""
