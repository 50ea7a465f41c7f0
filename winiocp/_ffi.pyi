# The generated module's one public name, typed (see _cdata.py).
from ._cdata import TypedFFI

ffi: TypedFFI
