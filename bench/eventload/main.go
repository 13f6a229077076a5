// Command eventload measures LLMProxy's event consumers from outside: it
// publishes RequestCompleted events straight to JetStream and times how long
// a meter or notifier process takes to work through them, reading the
// process's own counters off its /metrics.
//
//	eventload measure --nats URL --n N --metrics URL --metric NAME [--match S]
//	eventload publish --nats URL --n N     then start the consumer, and
//	eventload measure --backlog --n N --metrics URL --metric NAME
//	eventload sink --listen ADDR          a fast webhook receiver (200 to all)
//	eventload nats --listen ADDR --store DIR   an embedded JetStream server
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: eventload measure|publish|sink|nats [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "measure":
		err = cmdMeasure(os.Args[2:])
	case "publish":
		err = cmdPublish(os.Args[2:])
	case "sink":
		err = cmdSink(os.Args[2:])
	case "nats":
		err = cmdNATS(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "eventload:", err)
		os.Exit(1)
	}
}
