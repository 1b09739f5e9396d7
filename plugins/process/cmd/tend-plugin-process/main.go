// Command tend-plugin-process is Tend's process action plugin. tend-agent starts it
// through go-plugin; run by hand, it says so and exits. See
// plugins/process/README.md for its actions and parameters.
package main

import (
	"tend.dev/tend/plugins/process"
	"tend.dev/tend/plugins/sdk"
)

func main() { sdk.Serve(process.New(sdk.Logger())) }
