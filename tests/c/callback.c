/* A shared library for tests/tests/shared_library.rs: it calls back into the program, so that
   the program's allocations have a frame here. The test builds it with frame pointers and line
   tables, once as is and once with SECOND defined, which puts the call on another line. */

typedef void (*callback)(void);

#ifndef SECOND
void tracemalloc_test_call(callback f) {
    f(); /* CALL */
}
#else
void tracemalloc_test_call(callback f) {
    f(); /* SECOND CALL */
}
#endif
