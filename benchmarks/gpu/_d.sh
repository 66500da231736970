set -u
source .device-kit/setup.sh
bash .device-kit/build-llama-cuda.sh
mkdir -p $OUT
M=.device-build/synth
python3 benchmarks/gpu/synth.py --out $M > $OUT/synth.txt 2>&1
(setsid nohup python3 benchmarks/gpu/warm_marlin.py $M/gptq $M/awq > .device-build/marlin.log 2>&1 &)
timeout 200 python3 benchmarks/gpu/gemv_tune.py --save > $OUT/gemv_tune.txt 2>&1
timeout 200 python3 benchmarks/gpu/_dbg.py $M/gptq > $OUT/dbg.txt 2>&1
bash .device-kit/build-llama-cuda.sh --wait 400 > $OUT/build.txt 2>&1
source .device-kit/setup.sh
python3 -c "import llama_cpp; print('llama ok', llama_cpp.llama_supports_gpu_offload())" >> $OUT/build.txt 2>&1
tail -2 .device-build/marlin.log > $OUT/marlin.txt
for f in gemv_tune dbg build marlin; do echo "### $f"; grep -v "WARN\|INFO\|Warn\|^\s*$\|GPT-QModel\|Transformers :\|Torch  \|Triton  \|│\|┌\|└\|Configuration class\|Compiling" $OUT/$f.txt | tail -50; done
