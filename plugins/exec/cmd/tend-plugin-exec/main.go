// Command tend-plugin-exec is Tend's exec action plugin. tend-agent starts it
// through go-plugin; run by hand, it says so and exits. See
// plugins/exec/README.md for its actions and parameters.
package main

import (
	"tend.dev/tend/plugins/exec"
	"tend.dev/tend/plugins/sdk"
)

func main() { sdk.Serve(exec.New(sdk.Logger())) }
