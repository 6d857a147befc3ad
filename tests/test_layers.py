"""The house's layering: importing a part of the package imports nothing above it."""

import subprocess
import sys

ABOVE_DATA = ("openjepa.pretrain", "openjepa.finetune", "openjepa.evaluate", "openjepa.viz", "openjepa.engine")


def loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m for m in sys.modules if m.startswith('openjepa'))))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_importing_the_data_layer_loads_no_training_evaluation_or_pictures():
    loaded = loaded_after("import openjepa.data.sources")
    assert "openjepa.data.sources" in loaded
    assert not [m for m in loaded if m.startswith(ABOVE_DATA)], loaded


def test_the_package_root_is_lazy_and_its_api_loads_on_use():
    assert loaded_after("import openjepa") == ["openjepa", "openjepa.version"]
    loaded = loaded_after("import openjepa; openjepa.build_mask_sampler")
    assert "openjepa.masks" in loaded and not [m for m in loaded if m.startswith(ABOVE_DATA)]
    code = "import openjepa; assert callable(openjepa.train) and callable(openjepa.evaluate) and callable(openjepa.finetune)"
    subprocess.run([sys.executable, "-c", code], check=True)
