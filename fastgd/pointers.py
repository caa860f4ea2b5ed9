"""Raw addresses as typed array data inside compiled code (for many-tensor kernels)."""

import numba
from numba import types
from numba.extending import intrinsic


@numba.njit(cache=True, nogil=True)
def address(arr):  # pragma: no cover - jit
    """Address of ``arr``'s first element: ``arr.__array_interface__["data"][0]``, ten times
    faster (the many-tensor launch reads hundreds of them per step)."""
    return arr.ctypes.data


@intrinsic
def address_as_pointer(typingctx, address, like):
    """``(like.dtype *) address``: a typed pointer at an integer address.

    The caller guarantees that ``address`` points to live, contiguous memory of ``like``'s
    dtype (the many-tensor kernels get addresses from arrays the optimizer holds).
    """
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen
