"""Writes legacy.pth: a tiny state dict in the legacy (non-zip) torch.save format, as
efficientnet-lite0-57934424.pth has it, for the reader's tests (src/train/effnet.rs), without
torch: stand-in classes under torch's module paths make the pickle name what torch's does.
Run: python3 tests/data/pth/make_legacy.py > tests/data/pth/legacy.pth
"""
import pickle, struct, sys, types, collections, io

# Stand-ins with the module paths torch.save writes, so the pickle names them as torch does.
torch = types.ModuleType("torch"); utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch; sys.modules["torch._utils"] = utils
def _rebuild_tensor_v2(*a): pass
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class FloatStorage: pass
class LongStorage: pass
FloatStorage.__module__ = LongStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage; torch.LongStorage = LongStorage

class Storage:
    def __init__(self, key, ty, values): self.key, self.ty, self.values = key, ty, values
class T:
    def __init__(self, st, off, size, stride): self.a = (st, off, tuple(size), tuple(stride), False, collections.OrderedDict())
    def __reduce__(self): return (_rebuild_tensor_v2, self.a)

class P(pickle.Pickler):
    def persistent_id(self, o):
        if isinstance(o, Storage):
            return ("storage", o.ty, o.key, "cpu", len(o.values))
        return None

a = Storage("0", FloatStorage, [float(i) for i in range(12)])
b = Storage("1", LongStorage, [7])
sd = collections.OrderedDict()
sd["w"] = T(a, 0, [2, 3], [3, 1])          # rows of the storage
sd["wt"] = T(a, 0, [3, 2], [1, 3])         # the same storage transposed
sd["tail"] = T(a, 6, [2, 2], [2, 1])       # an offset view
sd["n"] = T(b, 0, [], [])                  # a scalar long (num_batches_tracked)
sd._metadata = {"": {"version": 1}}        # what BUILD sets on torch's ordered dicts

out = io.BytesIO()
for obj in (0x1950a86a20f9469cfc6c, 1001, {"protocol_version": 1001, "little_endian": True}):
    pickle.dump(obj, out, protocol=2)
P(out, protocol=2).dump(sd)
pickle.dump(["0", "1"], out, protocol=2)
out.write(struct.pack("<q", 12)); out.write(struct.pack("<12f", *a.values))
out.write(struct.pack("<q", 1)); out.write(struct.pack("<q", 7))
sys.stdout.buffer.write(out.getvalue())
