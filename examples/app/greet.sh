#!/bin/sh
# Greets whoever /app/NAME names.
echo "hello from $(cat /app/NAME)"
