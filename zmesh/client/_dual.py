"""How one method definition is typed for both clients: ``Client.claim(...)`` returns a
``Claim | None``, ``AsyncClient.claim(...)`` a coroutine of one, from the single definition
in _api.py, with no signature written twice and nothing added at run time.

Rules: each decorator is the identity at run time (the method stays the plain function, so
the call path is what it was); to a type checker it is a descriptor whose ``__get__`` says,
by the client it is read from, what calling it returns:

* :func:`op`: a request or a flow of them. Client: the result ``T``; AsyncClient: a
  coroutine of ``T`` (its ``_call`` and ``_flow`` are coroutine functions).
* :func:`stream`: an event stream. Client: ``Iterator[T]``; AsyncClient: ``AsyncIterator[T]``.
* :func:`background`: a callback subscription. Client: the ``threading.Thread`` running it;
  AsyncClient: the ``asyncio.Task``.

The method is written as it reads for the blocking client (``-> Claim | None``); inside the
shared API classes (typed as neither client) that is also how calls between methods type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["background", "op", "stream"]

if TYPE_CHECKING:
    import asyncio
    import threading
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
    from typing import Concatenate, Generic, ParamSpec, TypeVar, overload

    from ._async import AsyncClient

    P = ParamSpec("P")
    T = TypeVar("T")

    class op(Generic[P, T]):
        def __init__(self, fn: Callable[Concatenate[Any, P], T]) -> None: ...

        @overload
        def __get__(self, obj: None, owner: type) -> Callable[Concatenate[Any, P], T]: ...
        @overload
        def __get__(self, obj: AsyncClient, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
        @overload
        def __get__(self, obj: object, owner: type) -> Callable[P, T]: ...
        def __get__(self, obj: object, owner: type) -> Any: ...

    class stream(Generic[P, T]):
        def __init__(self, fn: Callable[Concatenate[Any, P], Iterator[T]]) -> None: ...

        @overload
        def __get__(self, obj: None, owner: type) -> Callable[Concatenate[Any, P], Iterator[T]]: ...
        @overload
        def __get__(self, obj: AsyncClient, owner: type) -> Callable[P, AsyncIterator[T]]: ...
        @overload
        def __get__(self, obj: object, owner: type) -> Callable[P, Iterator[T]]: ...
        def __get__(self, obj: object, owner: type) -> Any: ...

    class background(Generic[P]):
        def __init__(self, fn: Callable[Concatenate[Any, P], object]) -> None: ...

        @overload
        def __get__(self, obj: None, owner: type) -> Callable[Concatenate[Any, P], object]: ...
        @overload
        def __get__(self, obj: AsyncClient, owner: type) -> Callable[P, asyncio.Task[None]]: ...
        @overload
        def __get__(self, obj: object, owner: type) -> Callable[P, threading.Thread]: ...
        def __get__(self, obj: object, owner: type) -> Any: ...

else:
    def op(fn: Any) -> Any:
        return fn

    stream = background = op
