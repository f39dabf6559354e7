# GPU call 2 (warm machine): the model's second part
cp .gpu2/part2 /tmp/m/ && ls -la /tmp/m
