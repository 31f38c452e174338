"""The public Python API: `from lora_finetune import X` gives the function or class, never a
submodule (a lazy `__getattr__` loses to a submodule of the same name once that is imported)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types


def test_the_readme_names_import_as_functions_and_classes():
    from lora_finetune import (
        ChatSession,
        LoRAFinetuneConfig,
        answer,
        build_dummy_dataset,
        evaluate,
        format_sample,
        generate,
        generate_file,
        list_modules,
        load_config,
        load_for_inference,
        merge,
        tokenize,
        train,
    )

    for obj in (
        train,
        evaluate,
        merge,
        generate,
        generate_file,
        answer,
        list_modules,
        load_config,
        load_for_inference,
        build_dummy_dataset,
        format_sample,
        tokenize,
    ):
        assert inspect.isfunction(obj), obj
    assert inspect.isclass(ChatSession) and inspect.isclass(LoRAFinetuneConfig)
    assert train.__module__ == "lora_finetune.training.run"
    assert merge.__module__ == "lora_finetune.use.merging"


def test_every_exported_name_is_a_function_or_class_after_the_subpackages_load():
    import lora_finetune
    import lora_finetune.training  # noqa: F401  (the import order that broke `train` before)
    import lora_finetune.use  # noqa: F401

    for name in lora_finetune.__all__:
        value = getattr(lora_finetune, name)
        assert not isinstance(value, types.ModuleType), name
        assert name in dir(lora_finetune)


def test_no_submodule_is_named_like_an_exported_name():
    import pkgutil

    import lora_finetune

    modules = {m.name for m in pkgutil.iter_modules(lora_finetune.__path__)}
    assert not modules & set(lora_finetune.__all__)


def test_importing_the_package_is_cheap():
    """`import lora_finetune` loads neither torch nor transformers (the CLI's --help stays fast)."""
    code = "import sys, lora_finetune; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_use_never_imports_training():
    """Imports flow one way: using an adapter needs nothing from the training code."""
    code = (
        "import sys, lora_finetune.use, lora_finetune.run_record; "
        "print([m for m in sys.modules if m.startswith('lora_finetune.training')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
