"""Entry point of the ``anoplug-cutpaste`` distribution: registers, imports nothing heavy."""

from anoplug import GeneratorSpec, hookimpl

_MODULE = "anoplug_cutpaste.cutpaste"


@hookimpl
def anoplug_generators() -> list[GeneratorSpec]:
    return [
        GeneratorSpec("cutpaste", f"{_MODULE}:CutPaste", title="CutPaste: a jittered rectangle pasted elsewhere",
                      category="cutpaste", tags=("self-supervised", "mask")),
        GeneratorSpec("cutpaste-scar", f"{_MODULE}:CutPasteScar", title="CutPaste-scar: a thin rotated strip",
                      category="cutpaste", tags=("self-supervised", "mask")),
        GeneratorSpec("cutpaste-3way", f"{_MODULE}:CutPaste3Way", title="CutPaste 3-way: normal / cutpaste / scar",
                      category="cutpaste", tags=("self-supervised", "mask")),
    ]
