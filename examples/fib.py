"""Fibonacci numbers, three ways."""

from functools import lru_cache


def fib_recursive(n: int) -> int:
    """The n-th Fibonacci number, by the definition (exponential time)."""
    if n < 2:
        return n
    return fib_recursive(n - 1) + fib_recursive(n - 2)


@lru_cache(maxsize=None)
def fib_memo(n: int) -> int:
    """The n-th Fibonacci number, memoised."""
    

def fib_iterative(n: int) -> int:
    """The n-th Fibonacci number in O(n) time and O(1) space."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":
    for i in range(10):
        print(i, fib_recursive(i), fib_memo(i), fib_iterative(i))
