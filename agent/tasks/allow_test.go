package tasks

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"tend.dev/tend/agent/config"
	"tend.dev/tend/internal/task"
)

// cleanupTree makes <root>/allowed/{app,app/sub}, <root>/outside, and
// symlinks allowed/app/escape -> outside, allowed/app/inner -> app/sub.
func cleanupTree(t *testing.T) (root, allowed string) {
	t.Helper()
	root = t.TempDir()
	root, err := filepath.EvalSymlinks(root)
	require.NoError(t, err)
	allowed = filepath.Join(root, "allowed", "app")
	require.NoError(t, os.MkdirAll(filepath.Join(allowed, "sub"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "outside"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(root, "outside"), filepath.Join(allowed, "escape")))
	require.NoError(t, os.Symlink(filepath.Join(allowed, "sub"), filepath.Join(allowed, "inner")))
	return root, allowed
}

func TestAllowList(t *testing.T) {
	root, allowed := cleanupTree(t)
	// An allowed path that is itself reached through a symlink.
	require.NoError(t, os.Symlink(filepath.Join(root, "allowed"), filepath.Join(root, "alias")))
	aliasApp := filepath.Join(root, "alias", "app")

	a, err := NewAllowList(map[string]config.ActionRule{
		"process.restart": {Commands: [][]string{{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"}, {"/usr/bin/odd", "$(literally)"}}, Pidfiles: []string{"/run/nginx.pid"}, Names: []string{"nginx"}},
		"process.kill":    {Signals: []string{"SIGTERM", "hup"}, Names: []string{"stuck-worker"}},
		"exec.run":        {Commands: [][]string{{"/usr/local/bin/rotate-logs", "--now"}}},
		"disk.cleanup":    {Paths: []string{allowed + "/", aliasApp}},
		"service.restart": {Units: []string{"nginx.service"}},
		"custom.thing":    {},
	})
	require.NoError(t, err)
	require.Equal(t, []string{"custom.thing", "disk.cleanup", "exec.run", "process.kill", "process.restart", "service.restart"}, a.Actions())

	type P = map[string]any
	nginx := []any{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"}
	rotate := []any{"/usr/local/bin/rotate-logs", "--now"}
	tests := []struct {
		name   string
		action string
		params P
		reason string // "" = allowed
	}{
		// Deny by default.
		{"absent action", "exec.shell", P{"cmd": "id"}, "action exec.shell not in the agent's allow-list"},
		{"absent built-in action", "service.stop", P{"name": "nginx.service"}, "action service.stop not in the agent's allow-list"},
		{"zero-value allow-list", "", nil, "not in the agent's allow-list"},

		// process.restart: exact argv.
		{"restart allowed argv", "process.restart", P{"command": nginx, "match": P{"pidfile": "/run/nginx.pid"}}, ""},
		{"restart literal metachar argv", "process.restart", P{"command": []any{"/usr/bin/odd", "$(literally)"}, "match": P{"name": "nginx"}}, ""},
		{"restart without match", "process.restart", P{"command": nginx}, "match {name | pidfile} is required"},
		{"restart other pidfile", "process.restart", P{"command": nginx, "match": P{"pidfile": "/run/sshd.pid"}}, "is not an allowed pidfile"},
		{"restart other process", "process.restart", P{"command": nginx, "match": P{"name": "sshd"}}, "is not an allowed process name"},
		{"restart extra arg", "process.restart", P{"command": append(append([]any{}, nginx...), "-g", "daemon off;")}, "is not an allowed command"},
		{"restart prefix", "process.restart", P{"command": []any{"/usr/sbin/nginx"}}, "is not an allowed command"},
		{"restart other binary", "process.restart", P{"command": []any{"/bin/sh", "-c", "/usr/sbin/nginx -c /etc/nginx/nginx.conf"}}, "is not an allowed command"},
		{"restart joined string", "process.restart", P{"command": "/usr/sbin/nginx -c /etc/nginx/nginx.conf"}, "must be a non-empty list of strings"},
		{"restart no command", "process.restart", P{"match": P{"name": "nginx"}}, "must be a non-empty list of strings"},
		{"restart non-string element", "process.restart", P{"command": []any{"/usr/sbin/nginx", 1.0}}, "must be a non-empty list of strings"},
		{"restart unknown param", "process.restart", P{"command": nginx, "env": P{"LD_PRELOAD": "/tmp/x.so"}}, `parameter "env" is not one this action takes`},
		{"restart match name leading dash", "process.restart", P{"command": nginx, "match": P{"name": "-9"}}, "starts with '-'"},
		{"restart match name injection", "process.restart", P{"command": nginx, "match": P{"name": "nginx;id"}}, "shell or control character"},
		{"restart match pidfile relative", "process.restart", P{"command": nginx, "match": P{"pidfile": "run/nginx.pid"}}, "must be absolute"},
		{"restart match unknown field", "process.restart", P{"command": nginx, "match": P{"cmdline": ".*"}}, "not a match field"},
		{"restart match not object", "process.restart", P{"command": nginx, "match": "nginx"}, "must be an object"},

		// exec.run: exact argv.
		{"exec allowed", "exec.run", P{"argv": rotate}, ""},
		{"exec semicolon", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "--now;id"}}, "is not an allowed command"},
		{"exec semicolon arg", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "--now", ";", "id"}}, "is not an allowed command"},
		{"exec newline", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "--now\nid"}}, "control character 0xa"},
		{"exec carriage return", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "--now\rid"}}, "control character 0xd"},
		{"exec NUL", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "--now\x00"}}, "control character 0x0"},
		{"exec command substitution", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "$(id)"}}, "is not an allowed command"},
		{"exec backticks", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "`id`"}}, "is not an allowed command"},
		{"exec leading dash option", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "--now", "--config=/tmp/x"}}, "is not an allowed command"},
		{"exec trailing space", "exec.run", P{"argv": []any{"/usr/local/bin/rotate-logs", "--now "}}, "is not an allowed command"},
		{"exec empty", "exec.run", P{"argv": []any{}}, "non-empty list"},
		{"exec newline in key", "exec.run", P{"argv": rotate, "x\ny": "1"}, "control character 0xa"},
		{"exec unknown param", "exec.run", P{"argv": rotate, "cwd": "/"}, `parameter "cwd" is not one this action takes`},

		// disk.cleanup: under an allowed path, lexically and resolved.
		{"cleanup the allowed dir", "disk.cleanup", P{"path": allowed, "pattern": "*.log", "olderThan": "24h", "mode": "delete"}, ""},
		{"cleanup below", "disk.cleanup", P{"path": allowed + "/sub", "mode": "quarantine"}, ""},
		{"cleanup symlink staying inside", "disk.cleanup", P{"path": allowed + "/inner"}, ""},
		{"cleanup through an aliased allowed path", "disk.cleanup", P{"path": aliasApp + "/sub"}, ""},
		{"cleanup /etc", "disk.cleanup", P{"path": "/etc"}, "disk.cleanup path /etc not under an allowed path (" + allowed + ", " + aliasApp + ")"},
		{"cleanup sibling prefix", "disk.cleanup", P{"path": allowed + "-other"}, "not under an allowed path"},
		{"cleanup parent", "disk.cleanup", P{"path": filepath.Dir(allowed)}, "not under an allowed path"},
		{"cleanup dotdot", "disk.cleanup", P{"path": allowed + "/../../outside"}, "must be in clean form"},
		{"cleanup dotdot after symlink", "disk.cleanup", P{"path": allowed + "/escape/.."}, "must be in clean form"},
		{"cleanup trailing slash", "disk.cleanup", P{"path": allowed + "/"}, "must be in clean form"},
		{"cleanup symlink escaping", "disk.cleanup", P{"path": allowed + "/escape"}, "resolves to " + root + "/outside, not under an allowed path"},
		{"cleanup missing", "disk.cleanup", P{"path": allowed + "/nope"}, "cannot be resolved"},
		{"cleanup relative", "disk.cleanup", P{"path": "var/log/app"}, "must be absolute"},
		{"cleanup leading dash", "disk.cleanup", P{"path": "-rf"}, "starts with '-'"},
		{"cleanup newline", "disk.cleanup", P{"path": allowed + "\n/etc"}, "control character 0xa"},
		{"cleanup NUL", "disk.cleanup", P{"path": allowed + "\x00/etc"}, "control character 0x0"},
		{"cleanup semicolon", "disk.cleanup", P{"path": allowed + ";rm -rf /"}, "contains a shell character"},
		{"cleanup command substitution", "disk.cleanup", P{"path": allowed + "/$(id)"}, "contains a shell character"},
		{"cleanup backticks", "disk.cleanup", P{"path": allowed + "/`id`"}, "contains a shell character"},
		{"cleanup no path", "disk.cleanup", P{"pattern": "*"}, "parameter path must be a path"},
		{"cleanup pattern with path", "disk.cleanup", P{"path": allowed, "pattern": "../../etc/*"}, "must match file names in path"},
		{"cleanup pattern dotdot", "disk.cleanup", P{"path": allowed, "pattern": ".."}, "must match file names"},
		{"cleanup pattern leading dash", "disk.cleanup", P{"path": allowed, "pattern": "-rf"}, "starts with '-'"},
		{"cleanup pattern injection", "disk.cleanup", P{"path": allowed, "pattern": "*.log;id"}, "shell character"},
		{"cleanup pattern bad glob", "disk.cleanup", P{"path": allowed, "pattern": "[a-"}, "syntax error"},
		{"cleanup bad mode", "disk.cleanup", P{"path": allowed, "mode": "shred"}, "mode must be delete or quarantine"},
		{"cleanup unknown param", "disk.cleanup", P{"path": allowed, "followSymlinks": true}, `parameter "followSymlinks" is not one this action takes (mode, olderThan, path, pattern, quarantineTTL, recursive)`},
		{"cleanup every param the plugin takes", "disk.cleanup", P{"path": allowed, "pattern": "*.log", "olderThan": "1h", "mode": "quarantine", "recursive": true, "quarantineTTL": "2h"}, ""},
		// Allowed by the rule, refused by the schema (the plugin's own).
		{"cleanup recursive not a bool", "disk.cleanup", P{"path": allowed, "recursive": "yes"}, "disk.cleanup invalid params: param recursive: want a bool (true or false), got string"},
		{"cleanup age not a duration", "disk.cleanup", P{"path": allowed, "olderThan": "7d"}, `invalid params: param olderThan: want a duration such as "30s" or "10m", got "7d"`},
		{"restart grace too long", "process.restart", P{"command": nginx, "match": P{"name": "nginx"}, "grace": "1h"}, "invalid params: param grace: at most 5m0s, got 1h0m0s"},
		{"restart both matches", "process.restart", P{"command": nginx, "match": P{"name": "nginx", "pidfile": "/run/nginx.pid"}}, "invalid params: param match: set exactly one of name or pidfile, not both"},
		{"kill unknown signal", "process.kill", P{"match": P{"name": "stuck-worker"}, "signal": "TERM", "x": 1.0}, `parameter "x" is not one this action takes`},

		// service.restart: a listed unit.
		{"service allowed", "service.restart", P{"name": "nginx.service"}, ""},
		{"service other", "service.restart", P{"name": "sshd.service"}, "service.restart unit sshd.service not an allowed unit (nginx.service)"},
		{"service leading dash", "service.restart", P{"name": "--no-block"}, "starts with '-'"},
		{"service injection", "service.restart", P{"name": "nginx.service;reboot"}, "shell or control character"},
		{"service newline", "service.restart", P{"name": "nginx.service\nreboot"}, "control character 0xa"},
		{"service missing", "service.restart", P{}, "parameter name must be a unit name"},

		// process.kill: signals limited.
		{"kill allowed", "process.kill", P{"match": P{"name": "stuck-worker"}, "signal": "TERM"}, ""},
		{"kill allowed SIG form", "process.kill", P{"match": P{"name": "stuck-worker"}, "signal": "SIGHUP"}, ""},
		{"kill other signal", "process.kill", P{"match": P{"name": "stuck-worker"}, "signal": "KILL"}, "signal KILL not an allowed signal (TERM, HUP)"},
		{"kill no signal", "process.kill", P{"match": P{"name": "stuck-worker"}}, "signal is required"},
		{"kill hostile process name", "process.kill", P{"match": P{"name": "`id`"}, "signal": "TERM"}, "shell or control character"},
		{"kill process name with slash", "process.kill", P{"match": P{"name": "../../bin/sh"}, "signal": "TERM"}, "contains '/'"},
		{"kill other process", "process.kill", P{"match": P{"name": "sshd"}, "signal": "TERM"}, "is not an allowed process name"},

		// A non-built-in action: present means allowed, hostile strings
		// are still refused.
		{"custom allowed", "custom.thing", P{"anything": P{"deep": []any{"ok"}}}, ""},
		{"custom NUL deep", "custom.thing", P{"anything": P{"deep": []any{"ok\x00"}}}, "parameter params.anything.deep[0] contains control character 0x0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p *structpb.Struct
			if tc.params != nil {
				var err error
				p, err = structpb.NewStruct(tc.params)
				require.NoError(t, err)
			}
			list := a
			if tc.name == "zero-value allow-list" {
				list = AllowList{}
			}
			err := list.Check(tc.action, p)
			if tc.reason == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			if strings.Contains(tc.reason, "invalid params: ") {
				require.Equal(t, task.CodeInvalidParams, task.CodeOf(err), "%v", err)
			} else {
				require.ErrorIs(t, err, task.ErrNotAllowed)
			}
			require.Contains(t, err.Error(), tc.reason)
		})
	}
}

func TestAllowListNothingConfigured(t *testing.T) {
	// Present but empty rules deny what needs a rule.
	a, err := NewAllowList(map[string]config.ActionRule{
		"exec.run": {}, "process.restart": {}, "disk.cleanup": {}, "service.restart": {}, "process.kill": {},
	})
	require.NoError(t, err)
	for action, params := range map[string]map[string]any{
		"exec.run":        {"argv": []any{"/bin/true"}},
		"process.restart": {"command": []any{"/bin/true"}},
		"disk.cleanup":    {"path": "/tmp"},
		"service.restart": {"name": "nginx.service"},
	} {
		p, _ := structpb.NewStruct(params)
		err := a.Check(action, p)
		require.ErrorIs(t, err, task.ErrNotAllowed, action)
		require.Contains(t, err.Error(), "this host allows no", action)
	}
	p, _ := structpb.NewStruct(map[string]any{"match": map[string]any{"name": "x"}, "signal": "KILL"})
	err = a.Check("process.kill", p)
	require.ErrorContains(t, err, "this host allows no processes to be stopped", "no names or pidfiles: nothing may be stopped")
	b, err := NewAllowList(map[string]config.ActionRule{"process.kill": {Names: []string{"x"}}})
	require.NoError(t, err)
	require.NoError(t, b.Check("process.kill", p), "process.kill without signals: any signal")
}

func TestNewAllowListRefusesBadRules(t *testing.T) {
	tests := []struct {
		name  string
		rules map[string]config.ActionRule
		msg   string
	}{
		{"empty command", map[string]config.ActionRule{"exec.run": {Commands: [][]string{{}}}}, "actions.exec.run.commands[0]: empty command"},
		{"relative program", map[string]config.ActionRule{"exec.run": {Commands: [][]string{{"rotate-logs"}}}}, "must be an absolute path"},
		{"newline in argv", map[string]config.ActionRule{"exec.run": {Commands: [][]string{{"/bin/x", "a\nb"}}}}, "control character"},
		{"relative path", map[string]config.ActionRule{"disk.cleanup": {Paths: []string{"var/log"}}}, "actions.disk.cleanup.paths[0]: \"var/log\" must be an absolute path"},
		{"shell char path", map[string]config.ActionRule{"disk.cleanup": {Paths: []string{"/var/log/$x"}}}, "shell character"},
		{"bad unit", map[string]config.ActionRule{"service.restart": {Units: []string{"-x"}}}, "starts with '-'"},
		{"bad signal", map[string]config.ActionRule{"process.kill": {Signals: []string{"SIGNOPE"}}}, `unknown signal "SIGNOPE"`},
		{"field for another action", map[string]config.ActionRule{"exec.run": {Paths: []string{"/tmp"}}}, "actions.exec.run.paths: does not apply to exec.run (it takes commands)"},
		{"fields on a custom action", map[string]config.ActionRule{"custom.x": {Commands: [][]string{{"/bin/x"}}}}, "not a built-in action"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewAllowList(tc.rules)
			require.ErrorContains(t, err, tc.msg)
		})
	}
}
