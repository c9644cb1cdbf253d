// Placeholder entry so the bin resolves while the agent is being written (issue 3).
process.stderr.write('sigil-agent: not built yet\n');
process.exit(2);
