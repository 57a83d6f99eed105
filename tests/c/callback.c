/* A shared library for tests/tests/shared_library.rs: it calls back into the program, so that
   the program's allocations have a frame here. The test builds it with frame pointers and line
   tables. */

typedef void (*callback)(void);

void tracemalloc_test_call(callback f) {
    f(); /* CALL */
}
