"""What the stand-in speakers say: a sentence grammar (ASR, ER, SV) and Fluent-Speech-Commands intents (IC).

ASR text uses only A-Z, apostrophe and single spaces (the characters of S3PRL's char.dict)."""

from typing import List, Tuple

import numpy as np

_SUBJECTS = ["the old man", "a young girl", "my brother", "the teacher", "our neighbour", "the farmer", "a tall soldier",
             "the doctor", "his mother", "the little boy", "a quiet woman", "the captain", "my sister", "the baker",
             "their uncle", "the driver", "a clever student", "the king", "the nurse", "her father"]
_VERBS = ["walked to", "looked at", "painted", "carried", "opened", "found", "cleaned", "visited", "watched",
          "followed", "closed", "bought", "sold", "fixed", "remembered", "forgot", "lifted", "pushed", "chose", "liked"]
OBJECTS = ["the red door", "a wooden box", "the green house", "the big river", "a broken chair", "the small garden",
            "an empty bottle", "the heavy stone", "a yellow kite", "the dark forest", "the new bridge", "a silver coin",
            "the long letter", "a warm blanket", "the old church", "a white horse", "the narrow road", "a blue basket",
            "the high tower", "a round table"]
"""The noun phrases sentences use (QbE's stand-in queries are taken from them)."""
_PLACES = ["near the market", "by the sea", "in the village", "under the tree", "behind the school", "at the station",
           "on the hill", "across the field", "inside the barn", "beside the lake", "in the city", "at the harbour"]
_TIMES = ["in the morning", "at night", "before dinner", "after the rain", "last summer", "every day", "on sunday",
          "in the evening", "during the storm", "at noon", "yesterday", "two weeks ago"]
_ADVERBS = ["slowly", "quickly", "carefully", "quietly", "again", "happily", "never", "always"]


def sentence(rng: np.random.Generator) -> str:
    """One read sentence, 6-14 words, e.g. 'THE OLD MAN SLOWLY OPENED THE RED DOOR NEAR THE MARKET'."""
    parts = [str(rng.choice(_SUBJECTS))]
    if rng.random() < 0.4:
        parts.append(str(rng.choice(_ADVERBS)))
    parts += [str(rng.choice(_VERBS)), str(rng.choice(OBJECTS))]
    if rng.random() < 0.7:
        parts.append(str(rng.choice(_PLACES)))
    if rng.random() < 0.5:
        parts.append(str(rng.choice(_TIMES)))
    return " ".join(parts).upper()


def unique_sentences(rng: np.random.Generator, n: int, exclude=frozenset()) -> List[str]:
    out, seen = [], set(exclude)
    while len(out) < n:
        s = sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# Fluent Speech Commands: (action, object, location) intents with paraphrases; 'none' is the literal label.
FSC_INTENTS: List[Tuple[Tuple[str, str, str], List[str]]] = [
    (("activate", "lights", "none"), ["turn on the lights", "switch on the lights", "lights on"]),
    (("deactivate", "lights", "none"), ["turn off the lights", "switch off the lights", "lights off"]),
    (("activate", "lights", "kitchen"), ["turn on the kitchen lights", "switch on the lights in the kitchen"]),
    (("deactivate", "lights", "kitchen"), ["turn off the kitchen lights", "switch off the lights in the kitchen"]),
    (("activate", "lights", "bedroom"), ["turn on the bedroom lights", "lights on in the bedroom"]),
    (("deactivate", "lights", "bedroom"), ["turn off the bedroom lights", "lights off in the bedroom"]),
    (("activate", "lights", "washroom"), ["turn on the washroom lights", "switch on the lights in the washroom"]),
    (("deactivate", "lights", "washroom"), ["turn off the washroom lights", "switch off the lights in the washroom"]),
    (("activate", "lamp", "none"), ["turn on the lamp", "switch the lamp on"]),
    (("deactivate", "lamp", "none"), ["turn off the lamp", "switch the lamp off"]),
    (("activate", "music", "none"), ["play the music", "start the music", "put some music on"]),
    (("deactivate", "music", "none"), ["stop the music", "pause the music", "turn the music off"]),
    (("increase", "volume", "none"), ["turn the volume up", "make it louder", "increase the volume"]),
    (("decrease", "volume", "none"), ["turn the volume down", "make it quieter", "decrease the volume"]),
    (("increase", "heat", "none"), ["turn the heat up", "make it warmer", "increase the temperature"]),
    (("decrease", "heat", "none"), ["turn the heat down", "make it cooler", "decrease the temperature"]),
    (("increase", "heat", "kitchen"), ["turn up the heat in the kitchen", "make the kitchen warmer"]),
    (("decrease", "heat", "kitchen"), ["turn down the heat in the kitchen", "make the kitchen cooler"]),
    (("increase", "heat", "bedroom"), ["turn up the heat in the bedroom", "make the bedroom warmer"]),
    (("decrease", "heat", "bedroom"), ["turn down the heat in the bedroom", "make the bedroom cooler"]),
    (("increase", "heat", "washroom"), ["turn up the heat in the washroom", "make the washroom warmer"]),
    (("decrease", "heat", "washroom"), ["turn down the heat in the washroom", "make the washroom cooler"]),
    (("bring", "newspaper", "none"), ["bring me the newspaper", "get me the newspaper", "fetch the newspaper"]),
    (("bring", "juice", "none"), ["bring me some juice", "get me the juice", "fetch the juice"]),
    (("bring", "socks", "none"), ["bring me my socks", "get me the socks", "fetch my socks"]),
    (("bring", "shoes", "none"), ["bring me my shoes", "get me the shoes", "fetch my shoes"]),
    (("change language", "none", "none"), ["change the language", "switch the language"]),
    (("change language", "Chinese", "none"), ["switch the language to chinese", "set my language to chinese"]),
    (("change language", "Korean", "none"), ["switch the language to korean", "set my language to korean"]),
    (("change language", "English", "none"), ["switch the language to english", "set my language to english"]),
    (("change language", "German", "none"), ["switch the language to german", "set my language to german"]),
]

_CARRIERS = ["", "", "please ", "could you ", "hey ", "okay "]
_TAILS = ["", "", "", " please", " now", " for me"]


def command(rng: np.random.Generator, phrases: List[str]) -> str:
    return f"{rng.choice(_CARRIERS)}{rng.choice(phrases)}{rng.choice(_TAILS)}"


# Audio SNIPS (SF): the seven SNIPS intents, spoken commands with slot values. A template's {slot} is
# filled from SNIPS_VALUES; every word of a value carries the slot's name as its tag (SUPERB's
# all.iob.snips.txt tags each word with its slot, 'O' outside), so no template puts a slot next to
# one of the same name.
SNIPS_TEMPLATES: List[Tuple[str, List[str]]] = [
    ("PlayMusic", ["play {artist} on {service}", "play some {genre} music", "play the latest song by {artist}",
                   "put on some {genre} from {year}"]),
    ("GetWeather", ["what is the weather in {city} {timeRange}", "will it be {condition_description} in {city}",
                    "tell me the forecast for {city}"]),
    ("AddToPlaylist", ["add {artist} to my {playlist} playlist", "put this song on {playlist}",
                       "add a tune by {artist} to {playlist}"]),
    ("BookRestaurant", ["book a table for {party_size_number} in {city}",
                        "book a {restaurant_type} for {party_size_number} {timeRange}",
                        "reserve a {restaurant_type} in {city} {timeRange}"]),
    ("RateBook", ["rate this book {rating_value} stars", "give {object_name} {rating_value} out of {best_rating}",
                  "i would rate {object_name} {rating_value} points"]),
    ("SearchScreeningEvent", ["find movie times for {movie_name}", "when is {movie_name} playing {timeRange}",
                              "which cinema shows {movie_name} in {city}"]),
    ("SearchCreativeWork", ["find the {object_type} {object_name}", "show me the {object_type} called {object_name}",
                            "search for the {object_type} {object_name}"]),
]

SNIPS_VALUES = {
    "artist": ["john williams", "the beatles", "miles davis", "ella fitzgerald", "bob marley", "nina simone"],
    "service": ["spotify", "youtube", "deezer", "pandora"],
    "genre": ["jazz", "rock", "classical", "blues", "country", "reggae"],
    "year": ["the sixties", "nineteen eighty", "the nineties", "last year"],
    "city": ["paris", "boston", "london", "chicago", "berlin", "madrid", "toronto"],
    "timeRange": ["tomorrow", "tonight", "at noon", "next week", "this evening", "on friday"],
    "condition_description": ["rainy", "sunny", "cold", "windy", "foggy"],
    "playlist": ["workout", "road trip", "dinner party", "sleep", "summer hits"],
    "party_size_number": ["two", "four", "six", "three"],
    "restaurant_type": ["pizzeria", "steakhouse", "bistro", "tavern", "diner"],
    "rating_value": ["one", "two", "three", "four", "five"],
    "best_rating": ["five", "six", "ten"],
    "object_name": ["the hobbit", "war and peace", "little women", "the odyssey", "moby dick"],
    "movie_name": ["the godfather", "star wars", "casablanca", "jaws", "vertigo"],
    "object_type": ["book", "song", "album", "novel", "soundtrack", "game"],
}

SNIPS_SPEAKERS = {"train": ["Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"],
                  "valid": ["Aditi", "Amy", "Geraint", "Nicole"], "test": ["Brian", "Emma", "Raveena", "Russell"]}
"""The speakers of SUPERB's Audio SNIPS by split (the recipe keeps a split's files by these names)."""


def snips_command(rng: np.random.Generator) -> Tuple[str, List[str], List[str]]:
    """(intent, WORDS, tags): one spoken command, its upper-case words and each word's slot (or 'O')."""
    intent, templates = SNIPS_TEMPLATES[int(rng.integers(len(SNIPS_TEMPLATES)))]
    words, tags = [], []
    for token in str(rng.choice(templates)).split():
        if token.startswith("{"):
            slot = token[1:-1]
            value = str(rng.choice(SNIPS_VALUES[slot])).upper().split()
            words += value
            tags += [slot] * len(value)
        else:
            words.append(token.upper())
            tags.append("O")
    return intent, words, tags
