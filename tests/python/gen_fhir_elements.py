"""Writes src/mapping/fhir_elements.txt: every FHIR type of fhir.resources.R4B (resources,
data types, backbone elements) with its elements, `name:Type` (`*` repeats; `-` a
primitive, followed by its FHIR type when known: `-DateTime`), one type a line. Junction checks mapping bodies against it at load.

    .venv/bin/python tests/python/gen_fhir_elements.py > src/mapping/fhir_elements.txt
"""
import importlib, pkgutil, re, sys, typing
import fhir.resources.R4B as R

classes = {}
for m in pkgutil.iter_modules(R.__path__):
    if m.name.startswith(('tests', 'fhirtypes')) or m.name in ('fhirtypesvalidators',):
        continue
    try:
        mod = importlib.import_module(f"fhir.resources.R4B.{m.name}")
    except Exception as e:
        continue
    for name, obj in vars(mod).items():
        if isinstance(obj, type) and hasattr(obj, 'elements_sequence') and hasattr(obj, 'model_fields') and obj.__module__ == mod.__name__:
            classes[name] = obj

lines = []
for name in sorted(classes):
    cls = classes[name]
    try:
        seq = cls.elements_sequence()
    except Exception:
        continue
    fields = cls.model_fields
    by_alias = {(f.alias or k): f for k, f in fields.items()}
    parts = []
    for el in seq:
        f = by_alias.get(el) or fields.get(el)
        if f is None:
            continue
        ann = str(f.annotation)
        many = 'List[' in ann
        m = re.search(r'abc\.(\w+)Type', ann)
        if m:
            t = m.group(1)
            if t == 'FHIRPrimitiveExtension':
                t = '-'
        else:
            # a primitive: `-` and its FHIR type where the model says it
            # (`Annotated[datetime.date, Date()]` -> `-Date`; `bool` -> `-Boolean`)
            p = re.search(r', (\w+)\(', ann)
            if p:
                t = '-' + p.group(1)
            elif re.search(r'\bbool\b', ann):
                t = '-Boolean'
            else:
                t = '-'
        parts.append(f"{el}{'*' if many else ''}:{t}")
    lines.append(name + ' ' + ' '.join(parts))
sys.stdout.write('\n'.join(lines) + '\n')
