import pytest


@pytest.fixture(scope="session")
def smollm():
    from common.model_loader import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def hf_smollm():
    from common.oracle import load_hf_smollm2

    return load_hf_smollm2()
