"""Command-line tools other than LightningCLI's trainer verbs; each is a plain function with keyword-only
arguments that ``lightning_mf.cli`` exposes through jsonargparse."""
