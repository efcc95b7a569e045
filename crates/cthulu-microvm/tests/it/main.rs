//! The qemu backend against real microVMs (TCG here). They need QEMU and a built image:
//! `$CTHULU_TEST_IMAGES` (as `.ci/run` sets it) or `/var/cache/cthulu/images`; without
//! either the tests print `SKIP qemu: <reason>`.

mod disk;
mod failures;
mod pool;
mod support;
mod vm;
