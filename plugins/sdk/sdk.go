// Package sdk is what a Tend action plugin imports: the go-plugin handshake,
// the plugin map, the Go interface a plugin implements (Action), the gRPC
// adapters on both sides of the contract in proto/tend/plugin/v1, Serve,
// typed parameter readers (Params) and an in-process test helper
// (TestClient).
//
// A plugin is one binary named tend-plugin-<name> that serves one or more
// actions named "<name>.<action>". Its main is one line:
//
//	func main() { sdk.Serve(myplugin.New()) }
//
// The wire carries full action names ("process.restart") in Validate and
// Execute; Describe lists actions without the plugin prefix, as the proto
// says. Parameters arrive as a google.protobuf.Struct and reach the
// plugin as map[string]any (structpb.Struct.AsMap: numbers are float64,
// lists []any, objects map[string]any), read with Params.
//
// Errors: Validate and Execute return an error wrapping ErrInvalidParams for
// bad parameters (the agent sees codes.InvalidArgument) and ErrUnknownAction
// for an action the plugin does not serve (codes.NotFound). An action that
// was attempted and did not work is not an error: it is an ExecuteResult
// with Success false and an Output saying why.
//
// Plugins log to stderr only (Logger): stdout is go-plugin's handshake
// channel.
package sdk

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-plugin"

	"tend.dev/tend/internal/actions"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// The handshake. A plugin and the agent must agree on all three; the cookie
// is not a secret, it only keeps a person from running a plugin by hand.
const (
	// ProtocolVersion is the version of proto/tend/plugin/v1 spoken over
	// go-plugin. A new incompatible contract gets a new version in
	// VersionedPlugins, served side by side with the old one.
	ProtocolVersion = 1
	// MagicCookieKey is the environment variable go-plugin sets for the
	// plugin.
	MagicCookieKey = "TEND_PLUGIN"
	// MagicCookieValue is its fixed value.
	MagicCookieValue = "b1c4f2a9-tend-action-plugin-7e3d6a05"
	// PluginName is the name of the one plugin in the go-plugin plugin
	// map (go-plugin's "dispense" name), not of a Tend plugin.
	PluginName = "action"
	// BinaryPrefix starts the file name of every plugin binary.
	BinaryPrefix = "tend-plugin-"
	// MaxOutput is the most bytes of ExecuteResponse.output; longer output
	// is cut by CapOutput.
	MaxOutput = 4096
)

// Handshake is the go-plugin handshake shared by the agent and plugins.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   MagicCookieKey,
	MagicCookieValue: MagicCookieValue,
}

var (
	// ErrInvalidParams marks an error about an action's parameters
	// (codes.InvalidArgument on the wire).
	ErrInvalidParams = actions.ErrInvalidParams
	// ErrUnknownAction marks an action the plugin does not serve
	// (codes.NotFound on the wire).
	ErrUnknownAction = actions.ErrUnknownAction
)

// Action is what a plugin implements: one value per plugin binary, serving
// all of its actions. Methods are called concurrently.
type Action interface {
	// Describe names the plugin, its version and its actions with their
	// parameters.
	Describe(ctx context.Context) (*pluginv1.DescribeResponse, error)
	// Validate checks the parameters of action (a full name such as
	// "disk.cleanup") without doing anything. It returns an error wrapping
	// ErrInvalidParams (see Params.Err and InvalidParamsf) or
	// ErrUnknownAction (see UnknownAction).
	Validate(ctx context.Context, action string, params map[string]any) error
	// Execute performs the action. ctx ends at the task's deadline. It
	// validates the parameters again and returns the same errors as
	// Validate for bad ones; any other error means the action could not be
	// attempted. An attempt that failed is a result with Success false.
	Execute(ctx context.Context, req ExecuteRequest) (ExecuteResult, error)
}

// ExecuteRequest is one task for a plugin.
type ExecuteRequest struct {
	// TaskID is the control plane's id of the task; unique, and safe to
	// use as a file name only after checking it (see ValidTaskID).
	TaskID string
	// Action is the full action name, e.g. "process.restart".
	Action string
	// Params are the action's parameters (structpb.Struct.AsMap form).
	Params map[string]any
	// Timeout is the task's timeout (0: none given). The context passed to
	// Execute already ends then.
	Timeout time.Duration
}

// ExecuteResult is what a plugin did.
type ExecuteResult struct {
	// Success is true when the action did what it was asked.
	Success bool
	// Output is a human-readable account, capped at MaxOutput bytes (the
	// server adapter cuts it and replaces invalid UTF-8).
	Output string
	// Metrics are numbers worth keeping, e.g. files_deleted. Non-finite
	// values are dropped.
	Metrics map[string]float64
}

// VersionedPlugins is the go-plugin plugin map for both sides: impl is
// served by a plugin and nil on the agent's side.
func VersionedPlugins(impl Action) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolVersion: {PluginName: &GRPCPlugin{Impl: impl}},
	}
}

// InvalidParamsf returns an error wrapping ErrInvalidParams whose message
// is "invalid params: " and the formatted text.
func InvalidParamsf(format string, args ...any) error {
	return actions.InvalidParamsf(format, args...)
}

// UnknownAction returns an error wrapping ErrUnknownAction that names the
// actions the plugin does serve.
func UnknownAction(action string, known ...string) error {
	return actions.UnknownAction(action, known...)
}

// CapOutput makes s valid UTF-8, escapes its control characters other
// than newline and tab (an escape sequence in a command's output reaches
// whoever reads the task with tendctl as "\x1b[2J", not as a command to
// their terminal), and cuts it to at most MaxOutput bytes, ending a cut
// text with "…[truncated]".
func CapOutput(s string) string {
	s = escapeControls(strings.ToValidUTF8(s, "\uFFFD"))
	if len(s) <= MaxOutput {
		return s
	}
	const marker = "…[truncated]"
	cut := MaxOutput - len(marker)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + marker
}

// escapeControls writes C0 control characters but newline and tab, DEL
// and the C1 controls as \xNN or \u00NN.
func escapeControls(s string) string {
	if strings.IndexFunc(s, isEscaped) < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for _, r := range s {
		switch {
		case !isEscaped(r):
			b.WriteRune(r)
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

func isEscaped(r rune) bool {
	return r < 0x20 && r != '\n' && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0
}

// Quote returns s, from the host and so hostile (a process name, a file
// name), as a Go-quoted string safe to put in output and logs: control
// characters and invalid UTF-8 are escaped, and s is cut to max bytes
// first (max <= 0: no cut).
func Quote(s string, max int) string { return actions.Quote(s, max) }

// ValidTaskID reports whether id can be used as one path element: 1 to 128
// bytes of ASCII letters, digits, '-', '_' and '.', and not "." or "..".
func ValidTaskID(id string) bool {
	if id == "" || len(id) > 128 || id == "." || id == ".." {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// cleanMetrics drops non-finite values, which JSON cannot carry.
func cleanMetrics(m map[string]float64) map[string]float64 {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]float64, len(m))
	for k, v := range m {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			out[k] = v
		}
	}
	return out
}

// CleanResponse caps the output and drops non-finite metrics of a
// response; the agent applies it to what any plugin returns.
func CleanResponse(r *pluginv1.ExecuteResponse) *pluginv1.ExecuteResponse {
	if r == nil {
		return &pluginv1.ExecuteResponse{}
	}
	return &pluginv1.ExecuteResponse{Success: r.GetSuccess(), Output: CapOutput(r.GetOutput()), Metrics: cleanMetrics(r.GetMetrics())}
}
