#!/usr/bin/env bash
# Fetch the real weights into models/ (resumable, idempotent, selective).
#
#   bash download_checkpoint.sh                      # everything but sdxl, control (~16 GB; ~13 GB --fp16)
#   bash download_checkpoint.sh --only sdxl [--fp16] # SD-XL base + fp16-fix VAE + AnimateDiff SDXL module (opt-in)
#   bash download_checkpoint.sh --only control [--fp16]  # ControlNets, SparseCtrl, depth + pose models (opt-in)
#   bash download_checkpoint.sh --only sd15,base,vae,motion,lora,embeddings   # what sampling needs
#   bash download_checkpoint.sh --list               # the groups
#   bash download_checkpoint.sh --dry-run [--only …] # the plan: every file, its source, destination and check
#   bash download_checkpoint.sh --fp16               # SD1.5 / SD-XL in their fp16 variants (half the size)
#
# Uses the Hugging Face CLI (`hf`, or the older `huggingface-cli`) when installed — it resumes and honours HF_TOKEN —
# and curl otherwise (`curl -C -` resumes). A file already present is kept (re-fetched only if its known sha256
# does not match). sha256 values are those published for the files (Git LFS pointers); "unknown" where no published
# value was found: then only presence and a non-empty size are checked. Run `python scripts/check_models.py`
# afterwards to check formats, versions and shapes. Before the first download from a host, one short probe (a few
# seconds) checks that it can be reached; if not, the script stops at once with one message (exit status 1) instead
# of letting every file fail; curl tries each file at most 3 times. Environment: MODELS_DIR (default models/),
# HF_ENDPOINT, HF_TOKEN, HTTPS_PROXY.
set -euo pipefail
cd "$(dirname "$0")"

MODELS=${MODELS_DIR:-models}
HF_URL=${HF_ENDPOINT:-https://huggingface.co}
DEFAULT_GROUPS="sd15 base vae motion lora lightning lcm clipseg upscaler eval embeddings"
ALL_GROUPS="$DEFAULT_GROUPS sdxl control"  # sdxl (~15 GB), control (~11 GB) only when asked for: --only
EMBEDDINGS="altman andrew_ng bengio beyonce biden eli harry hermione hinton huang ironman jack_chen johnson lecun
lifeifei lisa mona monroe musk obama scarlett taylor trump zuck"
EMBEDDINGS_URL=https://raw.githubusercontent.com/Zhen-Dong/Magic-ComfyUI/HEAD/models/embeddings
EMBEDDINGS_LFS_URL=https://media.githubusercontent.com/media/Zhen-Dong/Magic-ComfyUI/HEAD/models/embeddings

# Per-file downloads: bounded retries (3 attempts, 10 s to connect), resumed (-C -); see curl_get.
CURL_FETCH=(-fL --connect-timeout 10 --retry 2 --retry-delay 2 -C -)
CURL_ERROR=""
PROBE_SECONDS=5
declare -A REACHABLE=()

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

describe() {
  case $1 in
    sd15) echo "SD1.5 diffusers folder (configs, tokenizer, UNet/VAE/CLIP; no safety checker) -> $MODELS/stable-diffusion-v1-5 (~5.2 GB, --fp16 ~2.6 GB)" ;;
    base) echo "Realistic Vision V5.1 noVAE, fp16 no-EMA single file -> $MODELS/base/ (~2.1 GB)" ;;
    vae) echo "sd-vae-ft-mse VAE (diffusers) -> $MODELS/vae/sd-vae-ft-mse (~335 MB)" ;;
    motion) echo "AnimateDiff motion modules v2 + v3 (original .ckpt) -> $MODELS/motion_module/ (~3.5 GB)" ;;
    lora) echo "AnimateDiff v2 MotionLoRA ZoomIn -> $MODELS/motion_lora/ (~78 MB)" ;;
    lightning) echo "AnimateDiff-Lightning 4-step motion module (diffusers layout; few-step, docs/fewstep.md) -> $MODELS/motion_module/ (~908 MB)" ;;
    lcm) echo "AnimateLCM motion module + its SD1.5 LoRA (few-step, docs/fewstep.md) -> $MODELS/motion_module/, $MODELS/lora/ (~1.9 GB)" ;;
    clipseg) echo "CLIPSeg rd64-refined (training masks, Face VCD) -> $MODELS/clipseg (~600 MB)" ;;
    upscaler) echo "Real-ESRGAN x2plus / x4plus (Tiled VCD upscaler, needs spandrel) -> $MODELS/upscaler/ (~130 MB)" ;;
    eval) echo "CLIP ViT-L/14 + DINO ViT-S/16 (evaluation metrics) -> $MODELS/eval/ (~1.8 GB)" ;;
    embeddings) echo "published Magic-Me identity embeddings (.pt) -> $MODELS/embeddings/ (~20 files, <1 MB)" ;;
    control) echo "SD1.5 ControlNets v1.1 openpose/depth/canny/lineart, SparseCtrl RGB + scribble, AnimateDiff v3 motion module, Depth Anything V2 Small, VitPose base (docs/control.md) -> $MODELS/controlnet/, $MODELS/sparsectrl/, $MODELS/control/ (~11 GB; --fp16 halves the ControlNets)" ;;
    sdxl) echo "SD-XL base 1.0 diffusers folder (no VAE) + sdxl-vae-fp16-fix + AnimateDiff SDXL beta motion module (docs/sdxl.md) -> $MODELS/stable-diffusion-xl-base-1.0, $MODELS/vae/sdxl-vae-fp16-fix, $MODELS/motion_module/ (~15 GB, --fp16 ~8 GB)" ;;
  esac
}

# plan GROUP: one line per file: "hf REPO REMOTE_FILE[|FALLBACK] DEST SHA256" or "url URL[|FALLBACK] DEST SHA256"
plan() {
  local sd=$MODELS/stable-diffusion-v1-5 w=safetensors
  [ "$FP16" = 1 ] && w=fp16.safetensors
  case $1 in
    sd15)
      local repo=stable-diffusion-v1-5/stable-diffusion-v1-5 f
      for f in model_index.json scheduler/scheduler_config.json tokenizer/merges.txt tokenizer/vocab.json \
               tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json text_encoder/config.json \
               unet/config.json vae/config.json; do
        echo "hf $repo $f $sd/$f unknown"
      done
      # the fp16 variant is saved under the plain name, so loading needs no `variant=` argument
      echo "hf $repo text_encoder/model.$w $sd/text_encoder/model.safetensors unknown"
      echo "hf $repo unet/diffusion_pytorch_model.$w $sd/unet/diffusion_pytorch_model.safetensors unknown"
      echo "hf $repo vae/diffusion_pytorch_model.$w $sd/vae/diffusion_pytorch_model.safetensors unknown" ;;
    base)
      echo "hf SG161222/Realistic_Vision_V5.1_noVAE Realistic_Vision_V5.1_fp16-no-ema.safetensors" \
           "$MODELS/base/Realistic_Vision_V5.1_noVAE.safetensors" \
           "99a75a901f4fec732056930a89fa34cf360f6f72d75ce5bf333ddf82adf8dd2a" ;;
    vae)
      echo "hf stabilityai/sd-vae-ft-mse config.json $MODELS/vae/sd-vae-ft-mse/config.json unknown"
      echo "hf stabilityai/sd-vae-ft-mse diffusion_pytorch_model.safetensors" \
           "$MODELS/vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors unknown" ;;
    motion)
      echo "hf guoyww/animatediff mm_sd_v15_v2.ckpt $MODELS/motion_module/mm_sd_v15_v2.ckpt" \
           "69ed0f5fef82b110aca51bcab73b21104242bc65d6ab4b8b2a2a94d31cad1bf0"
      # two different v3 uploads exist in the repo's history, so no single hash is recorded
      echo "hf guoyww/animatediff v3_sd15_mm.ckpt $MODELS/motion_module/v3_sd15_mm.ckpt unknown" ;;
    lora)
      echo "hf guoyww/animatediff v2_lora_ZoomIn.ckpt $MODELS/motion_lora/v2_lora_ZoomIn.ckpt" \
           "70ce8b9057b173b9249c48aca5d66c8aa1d8aaa040fda394e50e37f3e278195e" ;;
    lightning)
      echo "hf ByteDance/AnimateDiff-Lightning animatediff_lightning_4step_diffusers.safetensors" \
           "$MODELS/motion_module/animatediff_lightning_4step_diffusers.safetensors unknown" ;;
    lcm)
      echo "hf wangfuyun/AnimateLCM AnimateLCM_sd15_t2v.ckpt $MODELS/motion_module/AnimateLCM_sd15_t2v.ckpt unknown"
      echo "hf wangfuyun/AnimateLCM AnimateLCM_sd15_t2v_lora.safetensors" \
           "$MODELS/lora/AnimateLCM_sd15_t2v_lora.safetensors unknown" ;;
    clipseg)
      local f
      for f in config.json preprocessor_config.json merges.txt vocab.json special_tokens_map.json tokenizer_config.json; do
        echo "hf CIDAS/clipseg-rd64-refined $f $MODELS/clipseg/$f unknown"
      done
      echo "hf CIDAS/clipseg-rd64-refined model.safetensors|pytorch_model.bin $MODELS/clipseg/ unknown" ;;
    upscaler)
      echo "url https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth" \
           "$MODELS/upscaler/RealESRGAN_x2plus.pth unknown"
      echo "url https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth" \
           "$MODELS/upscaler/RealESRGAN_x4plus.pth unknown" ;;
    eval)
      local f clip=$MODELS/eval/clip-vit-large-patch14 dino=$MODELS/eval/dino-vits16
      for f in config.json preprocessor_config.json tokenizer.json tokenizer_config.json vocab.json merges.txt \
               special_tokens_map.json model.safetensors; do
        echo "hf openai/clip-vit-large-patch14 $f $clip/$f unknown"
      done
      echo "hf facebook/dino-vits16 config.json $dino/config.json unknown"
      echo "hf facebook/dino-vits16 preprocessor_config.json $dino/preprocessor_config.json unknown"
      echo "hf facebook/dino-vits16 model.safetensors|pytorch_model.bin $dino/ unknown" ;;
    embeddings)
      local name
      for name in $EMBEDDINGS; do
        echo "url $EMBEDDINGS_URL/$name.pt|$EMBEDDINGS_LFS_URL/$name.pt $MODELS/embeddings/$name.pt unknown"
      done ;;
    sdxl)
      local repo=stabilityai/stable-diffusion-xl-base-1.0 xl=$MODELS/stable-diffusion-xl-base-1.0 f
      for f in model_index.json scheduler/scheduler_config.json text_encoder/config.json text_encoder_2/config.json \
               unet/config.json; do
        echo "hf $repo $f $xl/$f unknown"
      done
      for f in merges.txt vocab.json special_tokens_map.json tokenizer_config.json; do
        echo "hf $repo tokenizer/$f $xl/tokenizer/$f unknown"
        echo "hf $repo tokenizer_2/$f $xl/tokenizer_2/$f unknown"
      done
      # no vae/: the fp16-fix VAE below replaces it (configs/sample/sdxl.yaml sets model.vae)
      echo "hf $repo text_encoder/model.$w $xl/text_encoder/model.safetensors unknown"
      echo "hf $repo text_encoder_2/model.$w $xl/text_encoder_2/model.safetensors unknown"
      echo "hf $repo unet/diffusion_pytorch_model.$w $xl/unet/diffusion_pytorch_model.safetensors unknown"
      echo "hf madebyollin/sdxl-vae-fp16-fix config.json $MODELS/vae/sdxl-vae-fp16-fix/config.json unknown"
      echo "hf madebyollin/sdxl-vae-fp16-fix diffusion_pytorch_model.safetensors" \
           "$MODELS/vae/sdxl-vae-fp16-fix/diffusion_pytorch_model.safetensors unknown"
      echo "hf guoyww/animatediff mm_sdxl_v10_beta.ckpt $MODELS/motion_module/mm_sdxl_v10_beta.ckpt unknown" ;;
    control)
      local name repo f
      # ControlNet v1.1 diffusers folders; the fp16 variant saved under the plain name, as for sd15
      for name in openpose:control_v11p_sd15_openpose depth:control_v11f1p_sd15_depth \
                  canny:control_v11p_sd15_canny lineart:control_v11p_sd15_lineart; do
        repo=lllyasviel/${name#*:}
        echo "hf $repo config.json $MODELS/controlnet/${name%%:*}/config.json unknown"
        echo "hf $repo diffusion_pytorch_model.$w $MODELS/controlnet/${name%%:*}/diffusion_pytorch_model.safetensors unknown"
      done
      for name in rgb scribble; do  # SparseCtrl (diffusers SparseControlNetModel folders), with the v3 motion module
        echo "hf guoyww/animatediff-sparsectrl-$name config.json $MODELS/sparsectrl/$name/config.json unknown"
        echo "hf guoyww/animatediff-sparsectrl-$name diffusion_pytorch_model.safetensors" \
             "$MODELS/sparsectrl/$name/diffusion_pytorch_model.safetensors unknown"
      done
      echo "hf guoyww/animatediff v3_sd15_mm.ckpt $MODELS/motion_module/v3_sd15_mm.ckpt unknown"
      echo "hf guoyww/animatediff v3_sd15_adapter.ckpt $MODELS/lora/v3_sd15_adapter.ckpt unknown"  # v3 domain adapter
      # the depth and pose preprocessors' models (transformers folders, loaded offline)
      for f in config.json preprocessor_config.json model.safetensors; do
        echo "hf depth-anything/Depth-Anything-V2-Small-hf $f $MODELS/control/depth-anything-v2-small/$f unknown"
        echo "hf usyd-community/vitpose-base-simple $f $MODELS/control/vitpose-base-simple/$f unknown"
      done ;;
  esac
}

hf_cli() {
  if command -v hf >/dev/null 2>&1; then echo hf
  elif command -v huggingface-cli >/dev/null 2>&1; then echo huggingface-cli
  fi
}

sha_ok() {  # sha_ok FILE SHA: true when the hash is unknown or matches
  [ "$2" = unknown ] && return 0
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# A downloaded identity embedding must be a torch file (zip "PK" or legacy pickle), not an HTML page or LFS pointer.
looks_like_torch_file() { head -c 2 "$1" | grep -q -e '^PK' -e $'^\x80'; }

# curl_get URL OUT [OPTION…]: one download. On a terminal curl draws one progress bar; otherwise it is silent and,
# on failure, its last error line (one per attempt) is kept in CURL_ERROR for process's FAILED line.
curl_get() {
  local url=$1 out=$2 errors rc=0
  shift 2
  if [ -t 2 ]; then
    curl "${CURL_FETCH[@]}" --progress-bar "$@" -o "$out" "$url" || { rc=$?; CURL_ERROR="curl exit status $rc"; }
  else
    errors=$(curl "${CURL_FETCH[@]}" -sS "$@" -o "$out" "$url" 2>&1) || rc=$?
    CURL_ERROR=${errors##*$'\n'}
  fi
  return "$rc"
}

fetch_one() {  # fetch_one KIND SOURCE DEST: download SOURCE to the file DEST (resuming), nothing else
  local kind=$1 src=$2 dest=$3 cli
  CURL_ERROR=""
  mkdir -p "$(dirname "$dest")"
  if [ "$kind" = url ]; then
    curl_get "$src" "$dest.part" && mv "$dest.part" "$dest"
    return
  fi
  local repo=${src%% *} file=${src#* }
  cli=$(hf_cli)
  if [ -n "$cli" ]; then
    local stage=$MODELS/.downloads/$repo
    "$cli" download "$repo" "$file" --local-dir "$stage" >/dev/null && mv "$stage/$file" "$dest"
  else
    local auth=()
    [ -n "${HF_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $HF_TOKEN")
    curl_get "$HF_URL/$repo/resolve/main/$file" "$dest.part" "${auth[@]}" && mv "$dest.part" "$dest"
  fi
}

origin() {  # origin URL: its scheme://host[:port]
  local rest=${1#*://}
  echo "${1%%://*}://${rest%%/*}"
}

# require_host URL: before the first download from URL's host, one short probe. Without a network every file would
# otherwise fail on its own, after its retries and timeouts: minutes of errors instead of one line. Only failures to
# get through (proxy or host name not resolved, no connection, timeout, TLS handshake) stop the script; any HTTP
# answer, even an error, means the host is reachable. Without curl (Hugging Face CLI only) there is no probe.
require_host() {
  local site rc=0 why hint="check the network connection or the proxy (HTTPS_PROXY)"
  site=$(origin "$1")
  [ -n "${REACHABLE[$site]:-}" ] && return 0
  command -v curl >/dev/null 2>&1 || return 0
  curl -s -o /dev/null --head --connect-timeout "$PROBE_SECONDS" --max-time "$PROBE_SECONDS" "$site/" \
    2>/dev/null || rc=$?
  case $rc in
    5) why="the proxy's name does not resolve" ;;
    6) why="its host name does not resolve" ;;
    7) why="no connection" ;;
    28) why="no answer within $PROBE_SECONDS s" ;;
    35) why="the TLS handshake failed" ;;
    *) REACHABLE[$site]=1; return 0 ;;
  esac
  [ "$site" = "$(origin "$HF_URL")" ] && hint="$hint, or set HF_ENDPOINT to a reachable mirror"
  echo "error: cannot reach $site ($why); $hint, then run the same command again (files already here are kept)" >&2
  exit 1
}

# process KIND SOURCE DEST SHA [REMOTE_FILE]: fetch one planned file unless it is already there; say what happened.
# SOURCE (a URL, or REMOTE_FILE for hf) may list alternatives "a|b", tried in order; a DEST ending in "/" is a
# folder that receives whichever alternative exists upstream.
process() {
  local kind=$1 src=$2 dest=$3 sha=$4 repo="" alt target
  if [ "$kind" = hf ]; then repo=$src; src=$5; fi
  local alts=${src//|/ }
  if [[ $dest == */ ]]; then
    for alt in $alts; do [ -s "$dest$(basename "$alt")" ] && { dest=$dest$(basename "$alt"); break; }; done
  fi
  local shown=$dest from=${repo:+$HF_URL/$repo/resolve/main/}$src
  [[ $dest == */ ]] && shown="$dest{${alts// /,}}"
  if [[ $dest != */ ]] && [ -s "$dest" ]; then
    if sha_ok "$dest" "$sha"; then
      echo "  ok       $shown"
      return 0
    fi
    echo "  re-fetch $shown (its sha256 is not the published one)"
    [ "$DRY_RUN" = 1 ] || rm -f "$dest"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "  fetch    $shown <- $from (sha256 $sha)"
    return 0
  fi
  require_host "$from"
  echo "  fetch    $shown <- $from"
  for alt in $alts; do
    target=$dest
    [[ $dest == */ ]] && target=$dest$(basename "$alt")
    fetch_one "$kind" "${repo:+$repo }$alt" "$target" || continue
    if [[ $target == *.pt ]] && ! looks_like_torch_file "$target"; then
      echo "  (not a torch file: an HTML page or Git LFS pointer; trying the next source)" >&2
      rm -f "$target"
      continue
    fi
    if ! sha_ok "$target" "$sha"; then
      echo "  FAILED   $target: sha256 $(sha256sum "$target" | cut -d' ' -f1) is not the published $sha" >&2
      rm -f "$target"
      return 1
    fi
    return 0
  done
  echo "  FAILED   $shown: could not download from $from${CURL_ERROR:+ ($CURL_ERROR)}" >&2
  return 1
}

summary() {
  echo
  echo "present under $MODELS/:"
  local group line dest n have
  for group in $ALL_GROUPS; do
    n=0; have=0
    while read -r line; do
      set -- $line
      dest=$3; [ "$1" = hf ] && dest=$4
      n=$((n + 1))
      if [[ $dest == */ ]]; then
        compgen -G "$dest*.safetensors" >/dev/null || compgen -G "$dest*.bin" >/dev/null && have=$((have + 1))
      elif [ -s "$dest" ]; then
        have=$((have + 1))
      fi
    done < <(plan "$group")
    printf "  %-10s %3d/%-3d files  %s\n" "$group" "$have" "$n" "$( [ $have = $n ] && echo complete || echo incomplete)"
  done
}

ONLY=$DEFAULT_GROUPS
DRY_RUN=0
FP16=0
LIST=0
while [ $# -gt 0 ]; do
  case $1 in
    --only) ONLY=${2:?--only needs a comma-separated list of groups}; ONLY=${ONLY//,/ }; shift ;;
    --only=*) ONLY=${1#--only=}; ONLY=${ONLY//,/ } ;;
    --dry-run) DRY_RUN=1 ;;
    --fp16) FP16=1 ;;
    --list) LIST=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for group in $ONLY; do
  if [[ " $ALL_GROUPS " != *" $group "* ]]; then
    echo "error: --only: unknown group '$group'; groups: ${ALL_GROUPS// /,}" >&2
    exit 2
  fi
done

if [ "$LIST" = 1 ]; then
  for group in $ALL_GROUPS; do printf "%-10s %s\n" "$group" "$(describe "$group")"; done
  exit 0
fi

if [ "$DRY_RUN" = 0 ] && [ -z "$(hf_cli)" ] && ! command -v curl >/dev/null 2>&1; then
  echo "error: needs the Hugging Face CLI (pip install -U huggingface_hub) or curl" >&2
  exit 2
fi

failed=0
for group in $ONLY; do
  echo "[$group] $(describe "$group")"
  while read -r line; do
    # shellcheck disable=SC2086 # the plan's fields are space-separated by construction
    set -- $line
    if [ "$1" = hf ]; then
      process hf "$2" "$4" "$5" "$3" || failed=$((failed + 1))
    else
      process url "$2" "$3" "$4" || failed=$((failed + 1))
    fi
  done < <(plan "$group")
done
summary
if [ "$failed" -gt 0 ]; then
  echo "$failed file(s) failed; run the same command again to resume" >&2
  exit 1
fi
[ "$DRY_RUN" = 1 ] && echo "(dry run: nothing was downloaded)"
exit 0
