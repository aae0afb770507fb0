# Sourced by run_all.sh and convert_om.sh, after their usage() and die():
#   unknown_option WORD   ->  error: unknown option --batch-size; did you mean --batchsize?
#                             (bash run_all.sh --help lists them)      (one line, exit 2)
# The valid options are those usage() lists. Bash only: it runs before .venv exists.

# lower case, no dashes or underscores: --Batch_Size and --batch-size are batchsize
_squeeze() { local s="${1,,}"; s="${s//-/}"; _squeezed="${s//_/}"; }

# Levenshtein distance between $1 and $2, in $_distance
_edit_distance() {
  local a="$1" b="$2" i j cost best
  local -a prev cur
  for ((j = 0; j <= ${#b}; j++)); do prev[j]=$j; done
  for ((i = 1; i <= ${#a}; i++)); do
    cur=("$i")
    for ((j = 1; j <= ${#b}; j++)); do
      cost=1; [ "${a:i-1:1}" = "${b:j-1:1}" ] && cost=0
      best=$((prev[j] + 1))
      ((cur[j - 1] + 1 < best)) && best=$((cur[j - 1] + 1))
      ((prev[j - 1] + cost < best)) && best=$((prev[j - 1] + cost))
      cur[j]=$best
    done
    prev=("${cur[@]}")
  done
  _distance=${prev[${#b}]}
}

# closest_option WORD OPTION...: prints the option WORD most likely meant (the
# same but for dashes, underscores and case; else one it begins; else the
# nearest spelling, at most a third of it different), or nothing.
closest_option() {
  local word opt best="" best_d=999 longer
  _squeeze "${1%%=*}"; word="$_squeezed"; shift
  [ -n "$word" ] || return 0
  for opt in "$@"; do _squeeze "$opt"; [ "$_squeezed" = "$word" ] && { printf '%s' "$opt"; return 0; }; done
  if [ ${#word} -ge 3 ]; then
    for opt in "$@"; do _squeeze "$opt"; [[ "$_squeezed" == "$word"* ]] && { printf '%s' "$opt"; return 0; }; done
  fi
  for opt in "$@"; do
    _squeeze "$opt"; _edit_distance "$word" "$_squeezed"
    longer=${#word}; ((${#_squeezed} > longer)) && longer=${#_squeezed}
    if ((_distance < best_d && 3 * _distance <= longer)); then best="$opt"; best_d=$_distance; fi
  done
  printf '%s' "$best"
}

unknown_option() {
  local near options
  options="$(usage | grep -oE -- '(^|[[:space:](,])--?[A-Za-z][A-Za-z0-9_-]*' | sed -E 's/^[[:space:](,]+//' \
             | awk '!seen[$0]++')"
  # shellcheck disable=SC2086  # one option per word
  near="$(closest_option "$1" $options)"
  die "unknown option ${1%%=*}${near:+; did you mean $near?} (bash $0 --help lists them)"
}
