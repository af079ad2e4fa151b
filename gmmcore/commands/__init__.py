"""The verbs of ``gmmcore``: one thin module each (``configure_parser`` + ``run``; the module
docstring is the verb's help).  A verb orchestrates library modules; no verb imports another."""
