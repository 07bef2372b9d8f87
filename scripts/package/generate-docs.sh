#!/usr/bin/env bash
# Generates the man pages and shell completions from the ArgumentParser
# definitions, into OUTDIR/man/man1 and OUTDIR/completions/{bash,zsh,fish}.
#
#   scripts/package/generate-docs.sh OUTDIR BINDIR
#
# Man pages come from swift-argument-parser's generate-manual plugin, one page
# per command, renamed the way git names its pages (snapdump.backup.list.1 →
# snapdump-backup-list.1) so `man snapdump-backup` finds them. The plugin
# builds the package's debug configuration first: that is the build `make
# test` and development already have, so it costs nothing there (the help
# text is the same in every configuration). Completions come from the
# binaries in BINDIR (`--generate-completion-script`).
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${1:?usage: generate-docs.sh OUTDIR BINDIR}
bindir=${2:?usage: generate-docs.sh OUTDIR BINDIR}
swift=${SWIFT:-swift}

# The pages' date: the last commit's, so a rebuild of one commit gives the same pages.
date=$(git log -1 --format=%cs 2>/dev/null || date -u +%F)

rm -rf "$out/man" "$out/completions"
mkdir -p "$out/man/man1" "$out/completions/bash" "$out/completions/zsh" "$out/completions/fish"

log=$(mktemp)
stamp=$(mktemp)
trap 'rm -f "$log" "$stamp"' EXIT
if ! "$swift" package plugin generate-manual --configuration debug --multi-page --date "$date" >"$log" 2>&1; then
    cat "$log" >&2
    echo "Error: generate-manual plugin failed (log above)" >&2
    exit 1
fi
# The plugin names its output directories in lines like
# "Generated manual in 'file:///…/outputs/snapdump/'".
mapfile -t dirs < <(sed -n "s|^Generated manual in 'file://\(.*\)'$|\1|p" "$log")
if [ ${#dirs[@]} -eq 0 ]; then
    cat "$log" >&2
    echo "Error: generate-manual plugin reported no output directory" >&2
    exit 1
fi

# snapdump.backup.list.1 → snapdump-backup-list.1, with the title (.Dt) and
# cross references (.Xr) renamed the same way.
rename_page() {
    sed -e ':a' -e 's/^\(\.\(Dt\|Xr\) [^ .]*\)\./\1-/' -e 'ta' "$1"
}

# Only this run's pages: the plugin leaves those of removed commands behind.
for dir in "${dirs[@]}"; do
    while read -r page; do
        name=$(basename "$page" .1)
        rename_page "$page" >"$out/man/man1/${name//./-}.1"
    done < <(find "$dir" -maxdepth 1 -name '*.1' -newer "$stamp")
done

# A command group whose default subcommand has the group's name (`snapdump
# backup` runs `snapdump backup backup`): the group's page becomes the
# default subcommand's page (its options are what `man snapdump-backup` is
# read for) followed by the group's cross references (list, remove, …).
for page in "$out"/man/man1/*.1; do
    name=$(basename "$page" .1)
    last=${name##*-}
    child="$out/man/man1/$name-$last.1"
    [ -f "$child" ] || continue
    {
        # (awk 1: the generated page lacks a final newline.)
        sed -e "s/^\.Dt .*/.Dt ${name^^} 1/" \
            -e "s/^\.Nm \"\(.*\) $last\"$/.Nm \"\1\"/" "$child" | awk 1
        echo '.Sh "SEE ALSO"'
        grep '^\.Xr ' "$page" | grep -v "^\.Xr $name-$last 1" | sed '$s/ ,$//'
    } >"$page.new"
    mv "$page.new" "$page"
    rm "$child"
done

for tool in snapdump snapdumpd; do
    "$bindir/$tool" --generate-completion-script bash >"$out/completions/bash/$tool"
    "$bindir/$tool" --generate-completion-script zsh >"$out/completions/zsh/_$tool"
    "$bindir/$tool" --generate-completion-script fish >"$out/completions/fish/$tool.fish"
done

echo "generate-docs: $(ls "$out/man/man1" | wc -l) man pages, completions for bash, zsh, fish in $out" >&2
