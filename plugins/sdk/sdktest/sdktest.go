// Package sdktest holds test helpers shared by the action plugins' tests.
package sdktest

import (
	"context"
	"errors"
	"testing"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/plugins/sdk"
)

// Validator is a plugin's parameter validation.
type Validator interface {
	Validate(ctx context.Context, action string, params map[string]any) error
}

// ValidateLikeSchema runs the plugin's Validate and fails t unless it agrees
// exactly with the shared schema (internal/actions) that the control plane
// and the agent use, and refuses only with sdk.ErrInvalidParams. It reports
// whether the params were accepted.
func ValidateLikeSchema(t testing.TB, p Validator, action string, params map[string]any) bool {
	t.Helper()
	err := p.Validate(context.Background(), action, params)
	if serr := actions.Validate(action, params); (err == nil) != (serr == nil) || err != nil && err.Error() != serr.Error() {
		t.Fatalf("the plugin and the schema disagree: %v / %v", err, serr)
	}
	if err != nil && !errors.Is(err, sdk.ErrInvalidParams) {
		t.Fatalf("refused without ErrInvalidParams: %v", err)
	}
	return err == nil
}
