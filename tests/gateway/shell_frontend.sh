#!/bin/sh
# A pybk gateway frontend in busybox sh (docs/gateway.md). The build arg MODE picks a
# behaviour: empty builds; hang, crash, garbage, noreturn, double and error misbehave.

opt() { env | sed -n "s/^BUILDKIT_FRONTEND_OPT_[0-9]*=$1=//p" | head -n 1; }
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
call() { echo "$1"; read -r REPLY_LINE; }
# a definition of one op: the op, then the terminal op pointing at its digest
definition() {
    digest=$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)
    escaped=$(printf '%s' "$1" | sed 's/"/\\"/g')
    printf '{"def":["%s","{\\"inputs\\":[{\\"digest\\":\\"sha256:%s\\"}]}"]}' "$escaped" "$digest"
}
mkfile_op() {
    printf '{"file":{"actions":[{"input":-1,"mkfile":{"data":"%s","mode":420,"path":"%s"},"secondary_input":-1}]}}' "$2" "$1"
}

MODE=$(opt build-arg:MODE)
read -r HELLO
echo "frontend: mode ${MODE:-build}, pybk says ${HELLO%%,*}" >&2
echo "frontend: running as $(id -un) on host $(hostname)" >&2
case "$MODE" in
    hang) sleep 600; exit 0 ;;
    crash) echo "frontend: about to crash" >&2; exit 3 ;;
    garbage) echo "this is not json"; sleep 600 ;;
esac
call '{"jsonrpc":"2.0","id":1,"method":"hello","params":{"version":1,"requires":["solve","read_file"]}}'
[ "$MODE" = noreturn ] && exit 0
if [ "$MODE" = error ]; then
    call '{"jsonrpc":"2.0","id":2,"method":"return","params":{"error":{"message":"no greeting here"}}}'
    exit 0
fi

call "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"read_file\",\"params\":{\"input\":\"dockerfile\",\"path\":\"$(opt filename)\"}}"
GREETING=$(echo "$REPLY_LINE" | field data | base64 -d | sed -n 's/^GREETING //p')
call '{"jsonrpc":"2.0","id":3,"method":"read_file","params":{"input":"context","path":"message.txt"}}'
MESSAGE=$(echo "$REPLY_LINE" | field data | base64 -d)

NESTED=$(definition "$(mkfile_op /nested.txt "$(echo nested-ok | base64 -w 0)")")
call "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"solve\",\"params\":{\"definition\":$NESTED}}"
REF=$(echo "$REPLY_LINE" | field ref)
echo "frontend: nested solve gave $REF" >&2
call "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"read_file\",\"params\":{\"ref\":\"$REF\",\"path\":\"/nested.txt\"}}"
FROM_NESTED=$(echo "$REPLY_LINE" | field data | base64 -d)
call '{"jsonrpc":"2.0","id":6,"method":"warn","params":{"message":"shell frontend says hi"}}'

CONTENT=$(printf '%s\n%s\n%s\n' "$GREETING" "$FROM_NESTED" "$MESSAGE" | base64 -w 0)
RESULT=$(definition "$(mkfile_op /greeting.txt "$CONTENT")")
CONFIG='{"config":{"Cmd":["cat","/greeting.txt"],"Labels":{"built.by":"shell-frontend"}}}'
RETURN="{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"return\",\"params\":{\"definition\":$RESULT,\"image_config\":$CONFIG}}"
call "$RETURN"
[ "$MODE" = double ] && echo "$RETURN"
exit 0
