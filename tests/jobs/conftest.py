from tests.training.conftest import fresh_posts, tiny_model_dir, tweets  # noqa: F401  shared fixtures
