from tests.faces.conftest import fake_api  # noqa: F401  the local fake social-network API
from tests.training.conftest import fresh_posts, tiny_model_dir, tweets  # noqa: F401  shared fixtures
