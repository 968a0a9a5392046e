"""Thin admin/ops entry points; importable so tests and benchmarks can reuse the emulator."""
