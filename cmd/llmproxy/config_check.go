package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// cmdConfig runs `llmproxy config check FILE`: every error on its own line
// with the file's line number, exit 1 when there is any.
func cmdConfig(args []string) int {
	if len(args) != 2 || args[0] != "check" {
		fmt.Fprintln(os.Stderr, "usage: llmproxy config check FILE")
		return 2
	}
	if _, err := config.Load(args[1]); err != nil {
		var list *config.Errors
		if errors.As(err, &list) {
			fmt.Fprintln(os.Stderr, list.Error())
		} else {
			fmt.Fprintln(os.Stderr, err)
		}
		return 1
	}
	fmt.Printf("%s: ok\n", args[1])
	return 0
}
