"""An every-second standing task for W4, installed only when SISY_BENCH_PERIODIC=1."""
