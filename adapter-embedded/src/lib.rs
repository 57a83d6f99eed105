//! tracemalloc for microcontrollers (work in progress).
#![no_std]
