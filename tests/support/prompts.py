"""Prompts whose need for the strong model is plain: routers trained on them separate
them perfectly, so tests can tell where a request went and why."""

EASY = ["say hello", "name a colour", "what is 2 plus 2", "print hello world",
        "spell cat", "count to three"]
HARD = ["prove that there are infinitely many primes",
        "implement a lock-free concurrent hash map in C++",
        "derive the backpropagation equations for an LSTM",
        "design a byzantine fault tolerant consensus protocol",
        "prove the four colour theorem", "write a garbage collector in C"]
