# Sourced by the bench scripts: an argument that must be a count is refused
# at once, naming it and the script's usage, before anything is built or run.
need_count() { # what value usage
  [[ $2 =~ ^[1-9][0-9]{0,6}$ ]] && return 0
  echo "$1 must be a whole number from 1 to 9999999, not '$2'; usage: $3" >&2
  exit 2
}
