"""Built-in plugin of the host: registers the datasets that ship with anoplug.

It is loaded like any other plugin (dogfooding the hooks); methods themselves live in
separately installable plugins under ``plugins/``.
"""

from __future__ import annotations

from anoplug.hookspecs import hookimpl
from anoplug.specs import DatasetSpec


@hookimpl
def anoplug_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec("toy", "anoplug.data.toy:ToyDataset", title="Embedded procedural industrial dataset",
                    scheme="toy", description="toy:CATEGORY — generated on the fly, no download"),
        DatasetSpec("mvtec", "anoplug.data.mvtec:MVTecAD", title="MVTec AD (user path)",
                    scheme="mvtec", description="mvtec:PATH/CATEGORY — MVTec AD layout"),
        DatasetSpec("mvtec-loco", "anoplug.data.mvtec:MVTecLOCO", title="MVTec LOCO AD (user path)",
                    scheme="mvtec-loco", description="mvtec-loco:PATH/CATEGORY"),
        DatasetSpec("mvtec-3d", "anoplug.data.mvtec:MVTec3D", title="MVTec 3D-AD (user path)",
                    scheme="mvtec-3d", description="mvtec-3d:PATH/CATEGORY — rgb + xyz tiff as depth"),
        DatasetSpec("visa", "anoplug.data.visa:VisA", title="VisA (user path)",
                    scheme="visa", description="visa:PATH/CATEGORY — split csv → MVTec-like"),
        DatasetSpec("folder", "anoplug.data.folder:FolderDataset", title="Plain folder layout",
                    scheme="folder", description="folder:PATH — normal/, abnormal/, mask/ like anomalib's Folder"),
    ]
