"""Forms drawn from pydantic configs: each field gets a fitting input, defaults and validation."""

from typing import Literal

from pydantic import BaseModel, Field
from streamlit.testing.v1 import AppTest


class SmallConfig(BaseModel):
    """A config like SFTConfig: some fields carry help, some do not."""

    rank: int = Field(8, ge=1, description="LoRA rank")
    rate: float = Field(2e-4, gt=0, description="peak learning rate")
    mode: Literal["fast", "slow"] = "fast"
    shuffle: bool = True
    name: str = "run"
    epochs: int | None = None
    targets: str | list[str] = "all-linear"


def form_script():
    import streamlit as st

    from crowdtune.dashboard.forms import config_fields, validate_config
    from tests.pages.test_forms import SmallConfig

    with st.form("f"):
        values = config_fields(SmallConfig, "small")
        if st.form_submit_button("Go"):
            config, problems = validate_config(SmallConfig, values)
            st.session_state["result"] = config.model_dump() if config else problems


def test_each_field_gets_an_input_with_its_default_and_help():
    at = AppTest.from_function(form_script)
    at.run()
    assert at.number_input(key="small_rank").value == 8
    assert at.number_input(key="small_rank").help == "LoRA rank"
    assert at.number_input(key="small_rate").help == "peak learning rate"
    assert not at.checkbox(key="small_shuffle").help
    assert at.selectbox(key="small_mode").options == ["fast", "slow"]
    assert at.checkbox(key="small_shuffle").value is True
    assert at.text_input(key="small_epochs").value == ""
    at.button[0].click().run()
    assert at.session_state["result"] == {"rank": 8, "rate": 2e-4, "mode": "fast", "shuffle": True, "name": "run",
                                          "epochs": None, "targets": "all-linear"}


def test_typed_values_are_validated_into_the_config_or_named_problems():
    at = AppTest.from_function(form_script)
    at.run()
    at.text_input(key="small_epochs").input("3")
    at.text_input(key="small_targets").input('["q_proj", "v_proj"]')
    at.selectbox(key="small_mode").set_value("slow")
    at.button[0].click().run()
    result = at.session_state["result"]
    assert result["epochs"] == 3 and result["targets"] == ["q_proj", "v_proj"] and result["mode"] == "slow"
    at.number_input(key="small_rank").set_value(0)
    at.text_input(key="small_epochs").input("many")
    at.button[0].click().run()
    problems = at.session_state["result"]
    assert any(p.startswith("rank:") for p in problems) and any(p.startswith("epochs:") for p in problems)
