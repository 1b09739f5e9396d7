//go:build !failpoints

package failpoint

// Enabled reports whether this binary was built with the failpoints tag.
const Enabled = false

// Inject is a crash point. Without the failpoints build tag it does nothing
// and is inlined away.
func Inject(string) {}

// InjectAsync is a crash point evaluated beside the caller. Without the
// failpoints build tag it does nothing and is inlined away.
func InjectAsync(string) {}
