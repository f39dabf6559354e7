from __future__ import annotations

from e2urec.data import Item, User, build_prompt

HISTORY = [(Item(1, "Toy Story (1995)"), 5.0), (Item(2, "Heat (1995)"), 1.0)]
TARGET = Item(3, "Jumanji (1995)")


def test_movie_prompt_is_the_papers_simple_template():
    p = build_prompt(User(1, "female", "25-34", "programmer"), HISTORY, TARGET, "movie")
    assert p.text == (
        "The user is a female. Her job is programmer. Her age is 25-34. The user watched the "
        "following movies in order in the past, and rated them: ['1. Toy Story (1995) (5 stars)', "
        "'2. Heat (1995) (1 star)']. Note that more stars the user rated the movie, the more the "
        "user liked the movie. Based on the movies she has watched, deduce if she will like the "
        "movie ***Jumanji (1995)***. You should ONLY tell me yes or no."
    )


def test_target_item_sits_after_the_user_prefix():
    user = User(1, "male", "18-24", "writer")
    a = build_prompt(user, HISTORY, TARGET, "movie")
    b = build_prompt(user, HISTORY, Item(4, "Casino (1995)"), "movie")
    assert a.prefix == b.prefix  # the prefix depends on the user alone: reusable across items
    assert "Jumanji" in a.suffix and "Jumanji" not in a.prefix
    assert a.text.startswith(a.prefix) and a.text.endswith(a.suffix)
    assert "he has watched, deduce if he will like" in a.prefix


def test_book_wording_and_a_user_without_profile():
    p = build_prompt(User(9), [(Item(1, "Dune"), 4.0)], Item(2, "Emma"), "book")
    assert p.text.startswith("The user read the following books in order in the past")
    assert (
        "Based on the books the user has read, deduce if the user will like the book ***Emma***."
        in p.text
    )
    assert "movie" not in p.text and "None" not in p.text


def test_titles_with_quotes_render_as_a_python_list():
    p = build_prompt(
        User(1, "female"), [(Item(1, "Schindler's List (1993)"), 4.0)], TARGET, "movie"
    )
    assert '["1. Schindler\'s List (1993) (4 stars)"]' in p.prefix
