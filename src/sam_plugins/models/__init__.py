"""Model configurations, checkpoint loading, downloads and the model-provider plugin hooks."""
