# Sourced by tests/cli/*.sh (not a test itself).
# man_missing_options BIN MANPAGE: prints each --option that BIN --help lists
# and MANPAGE does not mention (nothing when the page documents them all).
man_missing_options() {
  local man opt
  man=$(sed 's/\\-/-/g; s/\\f[BIR]//g' "$2")
  for opt in $("$1" --help | grep -o -- '--[a-z-]*' | sort -u); do
    echo "$man" | grep -q -- "$opt" || printf ' %s' "$opt"
  done
}
