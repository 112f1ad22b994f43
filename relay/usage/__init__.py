"""What each exchange used: the meter reading token counts out of answers as they stream, the
recorder writing usage records in batches, key health (marking a key the provider refused), and
the background tasks they run on.

May import `backends`; nothing else of `relay`.
"""
